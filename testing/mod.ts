export { freePort, freePorts, waitForPort, waitUntil } from "./ports.ts";
export { type ManagedProcess, spawnLogged } from "./process.ts";
export {
  NATS_SERVER_VERSION,
  type NatsServer,
  natsServerBinary,
  type NatsServerOptions,
  type SecuredNatsServer,
  startNatsServer,
  startSecuredNatsServer,
  TEST_NATS_PASSWORDS,
} from "./nats_server.ts";
export {
  type NatsCluster,
  type NatsClusterNode,
  type NatsClusterOptions,
  startNatsCluster,
} from "./nats_cluster.ts";
export { type NatsOperatorSetup, natsOperatorSetup } from "./nats_jwt.ts";
export {
  CLICKHOUSE_ADMIN,
  CLICKHOUSE_READONLY,
  clickhouseConfigXml,
  type ClickHouseServer,
  type ClickHouseServerOptions,
  clickhouseUsersXml,
  startClickHouseServer,
} from "./clickhouse_server.ts";
export { assert, assertEquals, AssertionError, assertRejects } from "./assert.ts";
export { seededRandom } from "./random.ts";
export { readStreamMessages, type StoredMessage, type StreamReaderAuth } from "./stream_reader.ts";
