// Validate KEDA objects (a JSON array on stdin) against KEDA's CRD schemas; one line per
// problem, exit 1 if any.
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";

const objects = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk)).on("end", () => resolve(text));
}));
let failed = 0;
for (const object of objects) {
  const Model = keda[object.kind];
  const label = `${object.kind}/${object.metadata?.name}`;
  if (object.apiVersion !== "keda.sh/v1alpha1" || !Model) {
    console.log(`${label}: not a keda.sh/v1alpha1 kind this check knows`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`${label}: valid`);
  } catch (error) {
    console.log(`${label}: ${error.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
