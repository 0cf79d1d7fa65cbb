// Apache Kafka's Java client (kafka-clients) over a secure listener of a Tributary broker: SASL_SSL,
// SASL_PLAINTEXT or SSL, as the client properties given say. AdminClient creates TOPIC (2 partitions)
// and describes the cluster, a KafkaProducer sends COUNT records, a KafkaConsumer in a group reads
// them back (until COUNT records or 30 s) and commits, and the admin lists the group's committed
// offsets. Prints one JSON line for tests/clients/test_security_clients.py to check; a failure
// (a wrong password) is printed as {"error": ..., "message": ...}, the first cause that is a Kafka
// AuthenticationException (or else the outermost), and exits 0: it is what is tested.
// Usage: java -cp 'target/lib/*' Sasl.java BOOTSTRAP TOPIC COUNT [key=value ...]
// A value written @PATH is the content of the file PATH (the PEM strings of ssl.keystore.*).
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.AuthenticationException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class Sasl {
    static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') out.append('\\').append(c);
            else if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
            else out.append(c);
        }
        return out.append('"').toString();
    }

    static String list(Collection<String> items) {
        StringJoiner j = new StringJoiner(",", "[", "]");
        for (String item : items) j.add(quote(item));
        return j.toString();
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1];
        int count = Integer.parseInt(args[2]);
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        // Bounded: a client that cannot get through says so within seconds.
        common.put("request.timeout.ms", "10000");
        common.put("default.api.timeout.ms", "20000");
        for (int i = 3; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            common.put(kv[0], kv[1].startsWith("@") ? Files.readString(Path.of(kv[1].substring(1))) : kv[1]);
        }
        try {
            System.out.println(roundTrip(common, topic, count));
        } catch (Exception e) {
            Throwable found = e;
            for (Throwable c = e; c != null; c = c.getCause()) {
                if (c instanceof AuthenticationException) { found = c; break; }
            }
            System.out.println("{\"error\":" + quote(found.getClass().getSimpleName())
                + ",\"message\":" + quote(String.valueOf(found.getMessage())) + "}");
        }
    }

    static String roundTrip(Properties common, String topic, int count) throws Exception {
        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1))).all().get(30, TimeUnit.SECONDS);
            DescribeClusterResult cluster = admin.describeCluster();
            List<String> nodes = new ArrayList<>();
            for (Node n : cluster.nodes().get(30, TimeUnit.SECONDS)) nodes.add(n.host() + ":" + n.port());

            Properties p = new Properties();
            p.putAll(common);
            p.put(ProducerConfig.ACKS_CONFIG, "all");
            p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "20000");
            p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
                List<java.util.concurrent.Future<RecordMetadata>> sent = new ArrayList<>();
                for (int i = 0; i < count; i++) sent.add(producer.send(new ProducerRecord<>(topic, "k" + (i % 5), "java-" + i)));
                for (var f : sent) f.get(30, TimeUnit.SECONDS);
            }

            String group = topic + "-readers";
            Properties c = new Properties();
            c.putAll(common);
            c.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            c.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
            c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
            c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
            c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
            List<String> values = new ArrayList<>();
            try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
                consumer.subscribe(List.of(topic));
                long deadline = System.currentTimeMillis() + 30_000;
                while (values.size() < count && System.currentTimeMillis() < deadline) {
                    for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(300))) values.add(r.value());
                }
                consumer.commitSync(Duration.ofSeconds(20));
            }
            long committed = 0;
            Map<TopicPartition, OffsetAndMetadata> offsets =
                admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
            for (OffsetAndMetadata o : offsets.values()) committed += o.offset();
            return "{\"nodes\":" + list(nodes) + ",\"cluster_id\":" + quote(String.valueOf(cluster.clusterId().get()))
                + ",\"values\":" + list(values) + ",\"committed\":" + committed + "}";
        }
    }
}
