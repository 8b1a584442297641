import { parseArgs, type ParseArgsConfig } from 'node:util'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { isIP } from 'node:net'
import { InvalidParametersError } from '@guoce/interface'

export type Options = NonNullable<ParseArgsConfig['options']>

export function parse (argv: string[], options: Options, allowPositionals = false): { values: Record<string, string | boolean | string[] | undefined>, positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' }, json: { type: 'boolean' } }, allowPositionals, strict: true })
    return { values: r.values as Record<string, string | boolean | string[] | undefined>, positionals: r.positionals }
  } catch (err) {
    throw new InvalidParametersError((err as Error).message)
  }
}

export function defaultHome (): string { return process.env.GUOCE_HOME ?? join(homedir(), '.guoce') }

/** localhost, 127.0.0.0/8 or ::1 (brackets allowed) */
export function isLoopbackHost (host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1')
  if (h === 'localhost') return true
  if (isIP(h) === 4) return h.startsWith('127.')
  return isIP(h) === 6 && (h === '::1' || h === '0:0:0:0:0:0:0:1')
}

/**
 * HOST:PORT. `--api` (daemon, up) must be a loopback address, or `unix:PATH` (a socket only the
 * daemon's user may use): the local API has no authentication and starts downloads for whoever
 * reaches it, so it is for this host's users only.
 */
export function hostPort (s: string, what: string): { host: string, port: number, path?: string } {
  if (what === '--api' && s.startsWith('unix:')) {
    if (s.length === 5) throw new InvalidParametersError('--api unix:PATH needs a path')
    return { host: 'localhost', port: 0, path: resolve(s.slice(5)) }
  }
  const m = /^(.*):(\d+)$/.exec(s)
  if (m?.[1] == null || m[2] == null) throw new InvalidParametersError(`${what} must be HOST:PORT, got "${s}"`)
  const port = Number(m[2])
  if (port > 65535) throw new InvalidParametersError(`${what}: bad port ${port}`)
  const host = m[1].replace(/^\[|\]$/g, '')
  if (what === '--mirror' && !isLoopbackHost(host)) throw new InvalidParametersError(`--mirror must be a loopback address (127.0.0.1:PORT, localhost:PORT, [::1]:PORT): it fetches from any registry a request names; got "${s}"`)
  if (what === '--api' && !isLoopbackHost(host)) throw new InvalidParametersError(`--api must be a loopback address (127.0.0.1:PORT, localhost:PORT, [::1]:PORT) or unix:PATH: the local API has no authentication; got "${s}"`)
  return { host, port }
}

export function durationMs (s: string | undefined, what: string): number | undefined {
  if (s == null) return undefined
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s)
  if (m?.[1] == null) throw new InvalidParametersError(`${what} must be a duration like 30s or 500ms, got "${s}"`)
  const n = Number(m[1])
  return m[2] === 'ms' ? n : m[2] === 'm' ? n * 60_000 : n * 1000
}

/** "10GiB", "500MB", "1048576" -> bytes */
export function sizeBytes (s: string | undefined, what: string): number | undefined {
  if (s == null) return undefined
  const m = /^(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?$/i.exec(s)
  if (m?.[1] == null) throw new InvalidParametersError(`${what} must be a size like 20GiB, got "${s}"`)
  const units: Record<string, number> = { b: 1, kb: 1e3, kib: 1024, mb: 1e6, mib: 1024 ** 2, gb: 1e9, gib: 1024 ** 3, tb: 1e12, tib: 1024 ** 4 }
  return Math.floor(Number(m[1]) * (units[(m[2] ?? 'b').toLowerCase()] ?? 1))
}

/**
 * --piece-channel: secure (AES-256-GCM data channel keyed over Noise, the default) | stream (the
 * Noise-secured libp2p stream itself) | integrity (clear bytes, every piece still sha256-verified)
 */
export function pieceChannel (s: string | undefined): 'stream' | 'secure' | 'integrity' {
  if (s == null) return 'secure'
  if (s === 'stream' || s === 'secure' || s === 'integrity') return s
  throw new InvalidParametersError(`--piece-channel must be stream, secure or integrity, got "${s}"`)
}

/** A whole number >= 1, or undefined when absent. */
export function count (s: string | undefined, what: string): number | undefined {
  if (s == null) return undefined
  if (!/^\d+$/.test(s) || Number(s) < 1 || !Number.isSafeInteger(Number(s))) throw new InvalidParametersError(`${what} must be a whole number >= 1, got "${s}"`)
  return Number(s)
}
