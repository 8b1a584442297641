import type { Logger } from '@guoce/interface'
import { redactUrl } from '@guoce/content'

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent'
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 }

/** Fields that may carry credentials: URLs are redacted (query values, user info), headers never written. */
function redact (fields: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  if (fields == null) return fields
  let out: Record<string, unknown> | undefined
  for (const [k, v] of Object.entries(fields)) {
    const key = k.toLowerCase()
    const safe = key === 'url' && typeof v === 'string' ? redactUrl(v) : (key === 'headers' || key === 'authorization' || key === 'cookie') ? '[redacted]' : v
    if (safe !== v) { out ??= { ...fields }; out[k] = safe }
  }
  return out ?? fields
}

/**
 * JSON-lines logger to stderr; `level` from the caller (the CLI reads GUOCE_LOG). A `url` field is
 * written redacted and `headers` not at all: credentials never reach a log.
 */
export function jsonLogger (level: LogLevel = 'info', base: Record<string, unknown> = {}, write: (line: string) => void = l => { process.stderr.write(l) }): Logger {
  const min = LEVELS[level]
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (LEVELS[lvl] < min) return
    write(JSON.stringify({ time: new Date().toISOString(), level: lvl, ...redact(base), msg, ...redact(fields) }) + '\n')
  }
  return {
    debug: (m, f) => { emit('debug', m, f) },
    info: (m, f) => { emit('info', m, f) },
    warn: (m, f) => { emit('warn', m, f) },
    error: (m, f) => { emit('error', m, f) },
    child: (f) => jsonLogger(level, { ...base, ...f }, write)
  }
}

export const silentLogger: Logger = jsonLogger('silent')
