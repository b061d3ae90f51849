// Lints an OpenAPI document with Redocly's rules (redocly.yaml at the
// repository's root): exit 0 if there is no problem, 1 otherwise. As with
// the Redocly CLI, a problem listed in .redocly.lint-ignore.yaml (next to
// redocly.yaml: one rule at one place, each with its reason) is reported
// as ignored and fails nothing.
//
//   node tools/openapi/lint.mjs openapi.yaml
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { lint, loadConfig, formatProblems, getTotals } from '@redocly/openapi-core';

const top = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ref = path.resolve(process.argv[2] ?? path.join(top, 'openapi.yaml'));

const config = await loadConfig({ configPath: path.join(top, 'redocly.yaml') });
let problems;
try {
    problems = await lint({ ref, config });
} catch (e) {
    console.error(`${ref}: ${e.message}`);
    process.exit(1);
}
const totals = getTotals(problems);

formatProblems(problems, { format: 'stylish', totals, version: 'openapi-core' });

for (const p of problems.filter(p => p.ignored)) {
    console.log(`${ref}: ignored (.redocly.lint-ignore.yaml): ${p.ruleId}`
                + ` at ${p.location[0].pointer}`);
}
if (totals.errors || totals.warnings) {
    console.error(`${ref}: ${totals.errors} errors, ${totals.warnings} warnings`
                  + `, ${totals.ignored} ignored`);
    process.exit(1);
}
console.log(`${ref}: valid, no problems`
            + (totals.ignored ? ` (${totals.ignored} ignored)` : ''));
