/** containerd's registry host configuration (`certs.d/<registry>/hosts.toml`) that sends pulls to the mirror. */
import { mkdir, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { InvalidParametersError } from '@guoce/interface'
import { resolveUpstream } from './upstream.js'

/**
 * The hosts.toml text for `registry` with the mirror at `mirror` (`http://127.0.0.1:65002`). containerd asks
 * the mirror first (adding `?ns=<registry>`), and the registry itself (`server`) only when the mirror fails.
 */
export function hostsToml (registry: string, mirror: string, o: { insecure?: readonly string[] } = {}): string {
  let up
  try { up = resolveUpstream(registry, o) } catch { throw new InvalidParametersError(`--registry must be a registry host like registry.example.com or 127.0.0.1:5000, got "${registry}"`) }
  if (!/^https?:\/\/[^/]+$/.test(mirror)) throw new InvalidParametersError(`the mirror must be http://HOST:PORT, got "${mirror}"`)
  return [
    `# containerd: pulls of ${registry} go through the guoce registry mirror on this node`,
    '# (written by `guoce mirror hosts`; containerd reads it from config_path, ctr from --hosts-dir)',
    `server = "${up.base}"`,
    '',
    `[host."${mirror}"]`,
    '  capabilities = ["pull", "resolve"]',
    ''
  ].join('\n')
}

/** Write `<dir>/<registry>/hosts.toml` (atomically); returns its path. */
export async function writeHostsToml (dir: string, registry: string, mirror: string, o: { insecure?: readonly string[] } = {}): Promise<string> {
  const text = hostsToml(registry, mirror, o)
  const d = join(dir, registry)
  await mkdir(d, { recursive: true })
  const file = join(d, 'hosts.toml')
  await writeFile(file + '.tmp', text, { mode: 0o644 })
  await rename(file + '.tmp', file)
  return file
}
