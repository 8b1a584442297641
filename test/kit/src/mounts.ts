/** Cleaning up mounts a test or benchmark left under its directory, also when the process serving them is gone. */
import { execFile } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { promisify } from 'node:util'

const exec = promisify(execFile)

/**
 * Aborts the FUSE connection of every FUSE mount under `dir` (so that no unmount waits on a server that is dead
 * or stuck: ENVIRONMENT.md), then lazily detaches every mount under `dir`, deepest (latest) first.
 */
export async function unmountUnder (dir: string): Promise<void> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '')
  const ours = info.split('\n').map(l => l.split(' ')).filter(f => f[4]?.startsWith(dir + '/') === true)
  for (const f of ours.filter(f => / - fuse/.test(f.join(' ')))) {
    await exec('mount', ['-t', 'fusectl', 'none', '/sys/fs/fuse/connections']).catch(() => {})
    await writeFile(`/sys/fs/fuse/connections/${f[2]!.split(':')[1]!}/abort`, '1').catch(() => {})
  }
  for (const f of ours.reverse()) await exec('umount', ['-l', f[4]!]).catch(() => {})
}
