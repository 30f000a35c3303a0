// Reads a JSON array of Prometheus Operator objects on stdin and validates each against the
// operator's published CRD schemas (compiled by @kubernetes-models/prometheus-operator, pinned in
// package.json). Prints one line per invalid object and exits 1 if any; used by
// tests/test_kubernetes.py.
import { PodMonitor, Probe, PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { PodMonitor, Probe, PrometheusRule, ServiceMonitor };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const object of JSON.parse(input)) {
  const model = kinds[object.kind];
  if (model === undefined || object.apiVersion !== model.apiVersion) {
    console.log(`${object.kind} ${object.metadata?.name}: not a monitoring.coreos.com/v1 kind this checks`);
    failed += 1;
    continue;
  }
  try {
    new model(object).validate();
  } catch (error) {
    console.log(`${object.kind} ${object.metadata?.name}: ${error.message}`);
    failed += 1;
  }
}
process.exit(failed ? 1 : 0);
