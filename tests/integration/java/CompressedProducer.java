import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Properties;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Kafka's own Java client, the way Kafka Connect or a JVM service sends: each stdin line becomes one record,
 * and the records of one run go out in compressed batches. Tests run it with `java -cp <kafka libs>/* THIS_FILE
 * BOOTSTRAP TOPIC PARTITION CODEC` to check the worker reads what producers that are not finpulse's write.
 */
public class CompressedProducer {
    public static void main(String[] args) throws Exception {
        Properties config = new Properties();
        config.put("bootstrap.servers", args[0]);
        config.put("compression.type", args[3]);
        config.put("acks", "all");
        config.put("linger.ms", "500");  // one batch per run where the records fit
        config.put("batch.size", "1048576");
        config.put("key.serializer", ByteArraySerializer.class.getName());
        config.put("value.serializer", ByteArraySerializer.class.getName());
        int partition = Integer.parseInt(args[2]);
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(config)) {
            BufferedReader lines = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            for (String line = lines.readLine(); line != null; line = lines.readLine()) {
                producer.send(new ProducerRecord<>(args[1], partition, null, line.getBytes(StandardCharsets.UTF_8)));
            }
            producer.flush();
        }
    }
}
