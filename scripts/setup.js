// Runs before `npm test` (the pretest script): makes sure the Debian packages the suite uses are
// installed (scripts/debian-packages.txt). As root it installs the missing ones with apt-get; as
// another user it names them and fails, so no test is later skipped or failed for a missing tool.
import { readFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const list = fileURLToPath(new URL('./debian-packages.txt', import.meta.url))
const wanted = readFileSync(list, 'utf8').split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))

function installed (pkg) {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' })
  return r.status === 0 && r.stdout.includes('install ok installed')
}

if (spawnSync('dpkg-query', ['--version']).status !== 0) {
  console.error('setup: dpkg-query not found; the test suite needs a Debian-based machine with: ' + wanted.join(' '))
  process.exit(1)
}
const missing = wanted.filter(p => !installed(p))
if (missing.length === 0) process.exit(0)
if (process.getuid?.() !== 0) {
  console.error(`setup: missing Debian packages: ${missing.join(' ')}\n  install them as root: apt-get install -y ${missing.join(' ')}  (or run npm test as root)`)
  process.exit(1)
}
console.error(`setup: installing ${missing.join(' ')}`)
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
const run = (args) => spawnSync('apt-get', args, { stdio: ['ignore', 'inherit', 'inherit'], env }).status === 0
if (!run(['install', '-y', '-q', '--no-install-recommends', ...missing])) {
  // a fresh machine has no package lists yet
  if (!run(['update', '-q']) || !run(['install', '-y', '-q', '--no-install-recommends', ...missing])) {
    console.error(`setup: apt-get could not install ${missing.join(' ')}`)
    process.exit(1)
  }
}
const still = missing.filter(p => !installed(p))
if (still.length > 0) { console.error(`setup: still missing after apt-get: ${still.join(' ')}`); process.exit(1) }
