// Validates the ServiceMonitor objects of Kubernetes YAML files against the
// prometheus-operator API schema (compiled into @kubernetes-models/prometheus-operator,
// generated from the operator's Go types), which kubernetes-validate does not carry.
// Run by tests/deploy_prometheus.rs: node servicemonitor.mjs NPM_PREFIX FILE...
// Prints one line per object; exits 1 on the first invalid one.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, ...files] = process.argv.slice(2);
// Imported by path: the packages live in the test's npm prefix, not beside this file.
const load = (rel) => import(pathToFileURL(join(prefix, "node_modules", rel)).href);
const yaml = await load("js-yaml/dist/js-yaml.mjs");
const { ServiceMonitor } = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js");

let checked = 0;
for (const file of files) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || doc.kind !== "ServiceMonitor") continue;
    try {
      new ServiceMonitor(doc).validate();
    } catch (e) {
      console.error(`ERROR ${file}: ServiceMonitor ${doc.metadata?.name}: ${e.message}`);
      process.exit(1);
    }
    console.log(`OK ${file}: ServiceMonitor ${doc.metadata?.name}`);
    checked += 1;
  }
}
if (checked === 0) {
  console.error("no ServiceMonitor found");
  process.exit(1);
}
