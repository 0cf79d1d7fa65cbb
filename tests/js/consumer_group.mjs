// kafkajs consumer group against a Tributary broker.
// Usage: node consumer_group.mjs <bootstrap> <topic> <group> <expected>
// Consumes until <expected> records (or 60 s), commits, prints one JSON line.
import { Kafka, logLevel } from "kafkajs";
import { readFromStart } from "./read.mjs";

const [bootstrap, topic, groupId, expectedArg] = process.argv.slice(2);
const expected = Number(expectedArg);
const kafka = new Kafka({ clientId: "tributary-kafkajs-consumer", brokers: [bootstrap], logLevel: logLevel.WARN });
const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 });
await consumer.connect();
const values = await readFromStart(consumer, topic, expected, { timeoutMs: 60_000, autoCommit: true });
await consumer.commitOffsets([]).catch(() => {});
await consumer.disconnect();
const admin = kafka.admin();
await admin.connect();
const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
await admin.disconnect();
console.log(JSON.stringify({ values, committed }));
