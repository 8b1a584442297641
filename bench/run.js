// `npm run bench -- NAME [args]`: runs bench/NAME/run.js (or run.mjs) with the remaining arguments.
// Each benchmark prints one JSON object on stdout; progress goes to stderr.
import { spawn } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const [name, ...args] = process.argv.slice(2)
const entry = (n) => ['run.js', 'run.mjs'].map(f => join(here, n, f)).find(f => existsSync(f))
const names = readdirSync(here, { withFileTypes: true }).filter(d => d.isDirectory() && entry(d.name) != null).map(d => d.name)
if (name == null || !names.includes(name)) {
  console.error(`usage: npm run bench -- <${names.join('|')}> [options]`)
  process.exit(2)
}
const child = spawn(process.execPath, [entry(name), ...args], { stdio: 'inherit' })
child.on('exit', (code, signal) => { process.exit(code ?? (signal != null ? 1 : 0)) })
