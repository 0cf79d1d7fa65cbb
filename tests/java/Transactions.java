// Apache Kafka's Java client (KafkaProducer, KafkaConsumer) running transactions against a broker:
// a committed transaction with sendOffsetsToTransaction, an aborted one, and a zombie producer
// fenced by a newer one with its transactional id. Prints one JSON line for the pytest test
// (tests/clients/test_java_client.py) to check. Usage: java -cp 'target/lib/*' Transactions.java BOOTSTRAP TOPIC GROUP
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.errors.InvalidProducerEpochException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class Transactions {
    static KafkaProducer<String, String> producer(String bootstrap, String id) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, id);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "30000");
        KafkaProducer<String, String> producer = new KafkaProducer<>(p);
        producer.initTransactions();
        return producer;
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], group = args[2];
        KafkaProducer<String, String> a = producer(bootstrap, "java-txn");
        a.beginTransaction();
        for (int i = 0; i < 30; i++) a.send(new ProducerRecord<>(topic, i % 3, "k" + i, "kept-" + i));
        Map<TopicPartition, OffsetAndMetadata> offsets = Map.of(new TopicPartition(topic, 0), new OffsetAndMetadata(5));
        a.sendOffsetsToTransaction(offsets, new ConsumerGroupMetadata(group));
        a.commitTransaction();
        a.beginTransaction();
        for (int i = 0; i < 10; i++) a.send(new ProducerRecord<>(topic, i % 3, "d" + i, "dropped-" + i));
        a.sendOffsetsToTransaction(Map.of(new TopicPartition(topic, 0), new OffsetAndMetadata(99)), new ConsumerGroupMetadata(group));
        a.abortTransaction();

        // A second producer with the same id fences the first.
        KafkaProducer<String, String> b = producer(bootstrap, "java-txn");
        String fenced = "none";
        try {
            a.beginTransaction();
            a.send(new ProducerRecord<>(topic, 0, "z", "zombie")).get();
            a.commitTransaction();
        } catch (Exception e) {
            Throwable cause = e;
            while (cause.getCause() != null && !(cause instanceof ProducerFencedException) && !(cause instanceof InvalidProducerEpochException)) cause = cause.getCause();
            fenced = cause.getClass().getSimpleName();
        }
        a.close(Duration.ofSeconds(5));
        b.beginTransaction();
        b.send(new ProducerRecord<>(topic, 1, "b", "from-b"));
        b.commitTransaction();
        b.close(Duration.ofSeconds(5));

        Properties c = new Properties();
        c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        c.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        List<String> seen = new ArrayList<>();
        long committed;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
            List<TopicPartition> parts = List.of(new TopicPartition(topic, 0), new TopicPartition(topic, 1), new TopicPartition(topic, 2));
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            Map<TopicPartition, Long> ends = consumer.endOffsets(parts);
            long deadline = System.currentTimeMillis() + 30_000;
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(300))) seen.add(r.value());
                boolean done = true;
                for (TopicPartition tp : parts) done &= consumer.position(tp) >= ends.get(tp);
                if (done) break;
            }
            OffsetAndMetadata o = consumer.committed(Set.of(new TopicPartition(topic, 0))).get(new TopicPartition(topic, 0));
            committed = o == null ? -1 : o.offset();
        }
        StringBuilder json = new StringBuilder("{\"fenced\":\"" + fenced + "\",\"committed_offset\":" + committed + ",\"seen\":[");
        for (int i = 0; i < seen.size(); i++) json.append(i == 0 ? "" : ",").append('"').append(seen.get(i)).append('"');
        System.out.println(json.append("]}"));
    }
}
