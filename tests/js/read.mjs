// What the kafkajs test programs share: subscribing a connected consumer to a
// topic from its start and reading until `count` records arrive or `timeoutMs`
// passes. Each record as {partition, offset, value}, in arrival order.
export async function readFromStart(consumer, topic, count, { timeoutMs, autoCommit }) {
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const values = [];
  let finish;
  const done = new Promise((resolve) => { finish = resolve; });
  const timer = setTimeout(() => finish(), timeoutMs);
  await consumer.run({
    autoCommit,
    eachMessage: async ({ partition, message }) => {
      values.push({ partition, offset: Number(message.offset), value: message.value.toString() });
      if (values.length >= count) finish();
    },
  });
  await done;
  clearTimeout(timer);
  return values;
}
