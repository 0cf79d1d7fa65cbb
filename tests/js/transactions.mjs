// kafkajs transactions against a Tributary broker.
// Usage: node transactions.mjs <bootstrap> <topic> <offsets-topic> <transactional-id> <offsets-group> <reader-group>
// One transactional producer runs three transactions on <topic>:
//   "committed-<i>" (40 records, with sendOffsets to <offsets-group>: p0 -> 10, p1 -> 20), committed;
//   "aborted-<i>"   (30 records, with sendOffsets: p0 -> 25, p1 -> 30), aborted;
//   "late-<i>"      (20 records), committed.
// Then a read-committed kafkajs consumer group reads <topic> from the beginning
// (until 60 records or 30 s), and the admin client fetches <offsets-group>'s
// committed offsets. Prints one JSON line; the pytest side checks it.
import { Kafka, logLevel } from "kafkajs";
import { readFromStart } from "./read.mjs";

const [bootstrap, topic, offsetsTopic, transactionalId, offsetsGroup, readerGroup] = process.argv.slice(2);
const EXPECTED = 60;
const deadline = setTimeout(() => {
  console.error("transactions.mjs: gave up after 90 s");
  process.exit(2);
}, 90_000);

// kafkajs's default retries: it warns that fewer may break an idempotent producer's guarantees.
const kafka = new Kafka({ clientId: "tributary-kafkajs-txn", brokers: [bootstrap], logLevel: logLevel.WARN });

const producer = kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1,
  allowAutoTopicCreation: false });
await producer.connect();

async function transaction(prefix, count, end, offsets) {
  const txn = await producer.transaction();
  try {
    const messages = [];
    for (let i = 0; i < count; i++) messages.push({ key: `k${i % 7}`, value: `${prefix}-${i}` });
    await txn.send({ topic, messages });
    if (offsets) {
      await txn.sendOffsets({ consumerGroupId: offsetsGroup, topics: [{ topic: offsetsTopic, partitions: offsets }] });
    }
    await (end === "commit" ? txn.commit() : txn.abort());
  } catch (e) {
    if (txn.isActive()) await txn.abort().catch(() => {});
    throw e;
  }
}

await transaction("committed", 40, "commit", [{ partition: 0, offset: "10" }, { partition: 1, offset: "20" }]);
await transaction("aborted", 30, "abort", [{ partition: 0, offset: "25" }, { partition: 1, offset: "30" }]);
await transaction("late", 20, "commit");
await producer.disconnect();

// readUncommitted: false is kafkajs's default; spelled out because it is what is tested.
const consumer = kafka.consumer({ groupId: readerGroup, readUncommitted: false, sessionTimeout: 10000,
  heartbeatInterval: 500 });
await consumer.connect();
const values = await readFromStart(consumer, topic, EXPECTED, { timeoutMs: 30_000, autoCommit: false });
await consumer.disconnect();

const admin = kafka.admin();
await admin.connect();
const committed = await admin.fetchOffsets({ groupId: offsetsGroup, topics: [offsetsTopic] });
await admin.disconnect();
clearTimeout(deadline);
console.log(JSON.stringify({ values, committed }));
