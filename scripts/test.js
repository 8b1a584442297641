// Runs the whole suite with vitest and ends with a plain "N passed, N failed" line.
import { spawn } from 'node:child_process'
import { readFileSync, rmSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const dir = mkdtempSync(join(tmpdir(), 'guoce-test-'))
const out = join(dir, 'results.json')
const args = ['run', '--reporter=default', '--reporter=json', `--outputFile.json=${out}`, ...process.argv.slice(2)]
const child = spawn(join('node_modules', '.bin', 'vitest'), args, { stdio: 'inherit' })
child.on('exit', (code, signal) => {
  let summary = null
  try { summary = JSON.parse(readFileSync(out, 'utf8')) } catch {}
  rmSync(dir, { recursive: true, force: true })
  if (summary != null) {
    const skipped = summary.numPendingTests + summary.numTodoTests
    console.log(`${summary.numPassedTests} passed, ${summary.numFailedTests} failed${skipped > 0 ? `, ${skipped} skipped` : ''}`)
    if (process.env.CI === 'true' && skipped > 0) { console.error('CI=true: skipped tests are not allowed'); process.exit(1) }
  }
  process.exit(code ?? (signal != null ? 1 : 0))
})
