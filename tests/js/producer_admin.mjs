// kafkajs against a Tributary broker: admin and producer paths.
// Usage: node producer_admin.mjs <bootstrap> <topic> <count>
// Prints one JSON line with what kafkajs observed; the pytest side checks it.
import { Kafka, CompressionTypes, logLevel } from "kafkajs";

const [bootstrap, topic, countArg] = process.argv.slice(2);
const count = Number(countArg);
const kafka = new Kafka({ clientId: "tributary-kafkajs-test", brokers: [bootstrap], logLevel: logLevel.WARN,
  retry: { retries: 3 } });

const admin = kafka.admin();
await admin.connect();
const created = await admin.createTopics({ topics: [{ topic, numPartitions: 3, replicationFactor: 1 }],
  waitForLeaders: true });
const listed = await admin.listTopics();

const producer = kafka.producer({ allowAutoTopicCreation: false });
await producer.connect();
const base = 1_650_000_000_000;
const offsets = [];
for (let start = 0; start < count; start += 100) {
  const messages = [];
  for (let i = start; i < Math.min(count, start + 100); i++) {
    messages.push({ key: `k${i % 9}`, value: `js-${i}`, timestamp: String(base + i), headers: { source: "kafkajs" } });
  }
  const result = await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages });
  offsets.push(...result.map((r) => ({ partition: r.partition, errorCode: r.errorCode, baseOffset: r.baseOffset })));
}
await producer.disconnect();

const ends = await admin.fetchTopicOffsets(topic);
const byTime = await admin.fetchTopicOffsetsByTimestamp(topic, base + Math.floor(count / 2));
const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
let deleteError = null;
await admin.deleteTopics({ topics: [`${topic}-scratch`] }).catch((e) => { deleteError = e.message; });
await admin.disconnect();

console.log(JSON.stringify({ created, listed, offsets, ends, byTime, deleteError,
  partitions: metadata.topics[0].partitions.length }));
