// The Greeter of protos/helloworld.proto in Node (grpc-js): a service devcluster runs
// beside Python ones. Like devcluster.greeter it answers "Hello NAME from INSTANCE",
// sends the `devcluster-instance` response header, serves grpc.health.v1 health and
// server reflection, listens on 127.0.0.1:$PORT and stops gracefully on SIGINT/SIGTERM.
//
//   PORT=50061 DEVCLUSTER_INSTANCE=node1 node server.js
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation, protoPath: healthProtoPath } = require('grpc-health-check');
const { ReflectionService } = require('@grpc/reflection');

const PROTOS = process.env.GREETER_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
const HEALTH_ROOT = path.resolve(path.dirname(healthProtoPath), '..', '..');
const INSTANCE_HEADER = 'devcluster-instance';

const name = process.env.DEVCLUSTER_INSTANCE || process.env.PS || `node-greeter-${process.pid}`;
const port = process.env.PORT;
// Finish in-flight calls a little before devcluster's SIGKILL (its --grace, default 5 s).
const graceMs = 800 * Number(process.env.DEVCLUSTER_GRACE || 6.25);

if (port === undefined || port === '' || Number.isNaN(Number(port))) {
  console.error('node-greeter: no port: set $PORT (devcluster does)');
  process.exit(2);
}

// One package definition for the Greeter and health, so reflection lists both.
const definition = protoLoader.loadSync(['helloworld.proto', 'health/v1/health.proto'], {
  includeDirs: [PROTOS, HEALTH_ROOT],
  keepCase: true,
  defaults: true,
});
const helloworld = grpc.loadPackageDefinition(definition).helloworld;

function sayHello(call, callback) {
  const metadata = new grpc.Metadata();
  metadata.set(INSTANCE_HEADER, name);
  call.sendMetadata(metadata);
  console.log(`Received: ${call.request.name}`);
  callback(null, { message: `Hello ${call.request.name} from ${name}` });
}

const server = new grpc.Server();
server.addService(helloworld.Greeter.service, { SayHello: sayHello });
const health = new HealthImplementation({ '': 'SERVING', 'helloworld.Greeter': 'SERVING' });
health.addToServer(server);
new ReflectionService(definition).addToServer(server);

server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    console.error(`node-greeter: cannot listen on 127.0.0.1:${port} (${err.message}); is the port in use?`);
    process.exit(1);
  }
  console.log(`${name} listening on 127.0.0.1:${bound}`);
});

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`${name} stopping on ${signal} (grace ${graceMs / 1000}s)`);
  health.setStatus('', 'NOT_SERVING');
  health.setStatus('helloworld.Greeter', 'NOT_SERVING');
  const force = setTimeout(() => server.forceShutdown(), graceMs);
  force.unref();
  server.tryShutdown(() => {
    console.log(`${name} stopped`);
    process.exit(0);
  });
}
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));
