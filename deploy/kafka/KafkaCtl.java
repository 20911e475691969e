// Tiny admin helper for deploy/kafka/kafka.sh, compiled on demand against the
// broker's own kafka-clients jar (no kafka-tools needed).
//
//   probe        BOOTSTRAP                       -> exit 0 when the broker answers DescribeCluster
//   topics       BOOTSTRAP                       -> list topic names (internal ones hidden)
//   create-topic BOOTSTRAP NAME [PARTITIONS] [RF] -> create a topic; ok if it already exists
//   delete-topic BOOTSTRAP NAME                  -> delete a topic; ok if it does not exist
import java.util.List;
import java.util.Properties;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;

public class KafkaCtl {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: KafkaCtl probe|topics|create-topic|delete-topic BOOTSTRAP [NAME [PARTITIONS [RF]]]");
            System.exit(2);
        }
        String cmd = args[0];
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "8000");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        try (Admin admin = Admin.create(p)) {
            switch (cmd) {
                case "probe": {
                    DescribeClusterResult r = admin.describeCluster();
                    String id = r.clusterId().get(8, TimeUnit.SECONDS);
                    int nodes = r.nodes().get(8, TimeUnit.SECONDS).size();
                    System.out.println("cluster_id=" + id + " brokers=" + nodes);
                    if (nodes < 1) System.exit(1);
                    break;
                }
                case "topics": {
                    for (String t : new TreeSet<>(admin.listTopics().names().get(8, TimeUnit.SECONDS)))
                        System.out.println(t);
                    break;
                }
                case "create-topic": {
                    need(args, 3);
                    int parts = args.length > 3 ? Integer.parseInt(args[3]) : 1;
                    short rf = args.length > 4 ? Short.parseShort(args[4]) : 1;
                    try {
                        admin.createTopics(List.of(new NewTopic(args[2], parts, rf))).all().get(15, TimeUnit.SECONDS);
                        System.out.println("created " + args[2] + " partitions=" + parts);
                    } catch (ExecutionException e) {
                        if (!(e.getCause() instanceof TopicExistsException)) throw e;
                        System.out.println("exists " + args[2]);
                    }
                    break;
                }
                case "delete-topic": {
                    need(args, 3);
                    try {
                        admin.deleteTopics(List.of(args[2])).all().get(15, TimeUnit.SECONDS);
                        System.out.println("deleted " + args[2]);
                    } catch (ExecutionException e) {
                        if (!(e.getCause() instanceof UnknownTopicOrPartitionException)) throw e;
                        System.out.println("absent " + args[2]);
                    }
                    break;
                }
                default:
                    System.err.println("unknown command: " + cmd);
                    System.exit(2);
            }
        } catch (Exception e) {
            Throwable c = (e instanceof ExecutionException && e.getCause() != null) ? e.getCause() : e;
            System.err.println("error: " + c.getClass().getSimpleName() + ": " + c.getMessage());
            System.exit(1);
        }
    }

    private static void need(String[] args, int n) {
        if (args.length < n) {
            System.err.println("missing argument(s) for " + args[0]);
            System.exit(2);
        }
    }
}
