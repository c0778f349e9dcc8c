// An unmodified grpc-js client of an xDS target: it follows devcluster's registry
// (weights, drain, health, restarts) through devcluster's xDS server, like any gRPC client.
//
//   GRPC_XDS_BOOTSTRAP=.devcluster/xds-bootstrap.json node client.js [xds:///greeter] [N]
//
// Makes N Greeter calls one after another (default 700) and prints one JSON line:
// {"calls": N, "counts": {"<instance>": n, ...}, "errors": {"<CODE>": n, ...}}.
// The instance is read from the reply ("Hello NAME from INSTANCE").
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const grpcXds = require('@grpc/grpc-js-xds');
const protoLoader = require('@grpc/proto-loader');

grpcXds.register();

const PROTOS = process.env.GREETER_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
const target = process.argv[2] || 'xds:///greeter';
const total = Number(process.argv[3] || 700);
const CALL_TIMEOUT_MS = 5000;
const READY_TIMEOUT_MS = 20000;

const definition = protoLoader.loadSync('helloworld.proto', { includeDirs: [PROTOS], keepCase: true });
const { Greeter } = grpc.loadPackageDefinition(definition).helloworld;
const client = new Greeter(target, grpc.credentials.createInsecure());
const codeName = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

function call() {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
    client.sayHello({ name: 'node' }, { deadline }, (err, reply) => {
      if (err) resolve(codeName[err.code] || String(err.code));
      else resolve(reply.message.split(' from ').pop());
    });
  });
}

async function main() {
  await new Promise((resolve, reject) => {
    client.waitForReady(new Date(Date.now() + READY_TIMEOUT_MS), (err) => (err ? reject(err) : resolve()));
  });
  const counts = {};
  const errors = {};
  for (let i = 0; i < total; i += 1) {
    const outcome = await call();
    const into = /^[A-Z_]+$/.test(outcome) ? errors : counts;
    into[outcome] = (into[outcome] || 0) + 1;
  }
  client.close();
  // The xDS client's ADS stream is process-wide and keeps node alive: exit once written.
  process.stdout.write(`${JSON.stringify({ calls: total, counts, errors })}\n`, () => process.exit(0));
}

main().catch((err) => {
  process.stderr.write(`node-xds-client: ${err.message}\n`);
  process.exit(1);
});
