import type { Logger } from '@guoce/interface'

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent'
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 }

/** JSON-lines logger to stderr; `level` from the caller (the CLI reads GUOCE_LOG). */
export function jsonLogger (level: LogLevel = 'info', base: Record<string, unknown> = {}, write: (line: string) => void = l => { process.stderr.write(l) }): Logger {
  const min = LEVELS[level]
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (LEVELS[lvl] < min) return
    write(JSON.stringify({ time: new Date().toISOString(), level: lvl, ...base, msg, ...fields }) + '\n')
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
