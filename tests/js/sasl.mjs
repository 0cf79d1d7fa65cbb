// kafkajs over a SASL listener of a Tributary broker: SASL_PLAINTEXT, or SASL_SSL when a CA file is given.
// Usage: node sasl.mjs <bootstrap> <mechanism> <user> <password> <ca.pem|-> <topic> <count>
// <mechanism> as kafkajs names it: plain, scram-sha-256, scram-sha-512, or oauthbearer (then
// <password> is the token, and <user> is ignored).
// The admin client creates <topic> (2 partitions) and describes the cluster, a producer sends
// <count> records, a consumer group reads them back (until <count> records or 30 s) and commits,
// and the admin fetches the group's committed offsets. Prints one JSON line; the pytest side
// (tests/clients/test_security_clients.py) checks it. A failure (a wrong password) is printed as
// {"error": {...}} with the error's name, message and causes, and exits 0: it is what is tested.
import fs from "node:fs";
import { Kafka, logLevel } from "kafkajs";
import { readFromStart } from "./read.mjs";

const [bootstrap, mechanism, username, password, caFile, topic, countArg] = process.argv.slice(2);
const count = Number(countArg);
const giveUp = setTimeout(() => {
  console.error("sasl.mjs: gave up after 60 s");
  process.exit(2);
}, 60_000);

// retries: 0 so that a refused password is reported at once, not after kafkajs's backoff.
const kafka = new Kafka({
  clientId: "tributary-kafkajs-sasl", brokers: [bootstrap], logLevel: logLevel.NOTHING,
  ssl: caFile === "-" ? false : { ca: [fs.readFileSync(caFile)] },
  sasl: mechanism === "oauthbearer"
    ? { mechanism, oauthBearerProvider: async () => ({ value: password }) }
    : { mechanism, username, password },
  connectionTimeout: 5000, authenticationTimeout: 5000, retry: { retries: 0 },
});

function describe(e) {
  const chain = [];
  for (let c = e; c && chain.length < 5; c = c.cause) chain.push({ name: c.name, message: c.message });
  return { name: e.name, message: e.message, retriable: e.retriable, causes: chain.slice(1) };
}

async function roundTrip() {
  const admin = kafka.admin();
  await admin.connect();
  const created = await admin.createTopics({ topics: [{ topic, numPartitions: 2, replicationFactor: 1 }],
    waitForLeaders: true });
  const cluster = await admin.describeCluster();

  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) messages.push({ key: `k${i % 5}`, value: `${mechanism}-${i}` });
  const sent = await producer.send({ topic, acks: -1, messages });
  await producer.disconnect();

  const groupId = `${topic}-readers`;
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 });
  await consumer.connect();
  const values = await readFromStart(consumer, topic, count, { timeoutMs: 30_000, autoCommit: true });
  await consumer.disconnect(); // commits what was read
  const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
  await admin.disconnect();
  return { created, brokers: cluster.brokers, sent, values, committed: committed[0].partitions };
}

let result;
try {
  result = await roundTrip();
} catch (e) {
  result = { error: describe(e) };
}
clearTimeout(giveUp);
console.log(JSON.stringify(result));
