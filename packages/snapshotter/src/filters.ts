/**
 * containerd's filter syntax for List (a subset: what containerd and its tools send to a snapshotter).
 * A filter is selectors joined by `,` (all must hold); a snapshot is listed if any filter holds.
 * Selector: FIELDPATH [OP VALUE], FIELDPATH = `name` | `parent` | `kind` | `labels.KEY` (KEY may be
 * "quoted"), OP = `==` | `!=` | `~=` (regular expression), no OP: the field is present and not empty.
 * Anything else is SnapshotArgumentError (INVALID_ARGUMENT).
 */
import { SnapshotArgumentError } from './errors.js'

export interface FilterTarget { name: string, parent: string, kind: string, labels: Record<string, string> }
type Selector = { path: string[], op?: '==' | '!=' | '~=', value?: string, re?: RegExp }
export type Filter = Selector[]

const MAX_FILTER_BYTES = 4096

function readQuoted (s: string, i: number): [string, number] {
  const q = s[i]!
  let out = ''
  for (let j = i + 1; j < s.length; j++) {
    const c = s[j]!
    if (c === '\\' && j + 1 < s.length) { out += s[++j]!; continue }
    if (c === q) return [out, j + 1]
    out += c
  }
  throw new SnapshotArgumentError(`filter ${JSON.stringify(s)}: unterminated quote`)
}

export function parseFilter (s: string): Filter {
  if (Buffer.byteLength(s) > MAX_FILTER_BYTES) throw new SnapshotArgumentError(`filter longer than ${MAX_FILTER_BYTES} bytes`)
  const sels: Filter = []
  let i = 0
  const bad = (why: string): never => { throw new SnapshotArgumentError(`filter ${JSON.stringify(s)}: ${why} at ${i}`) }
  while (i < s.length) {
    const path: string[] = []
    for (;;) {
      if (s[i] === '"') { const [v, j] = readQuoted(s, i); path.push(v); i = j } else {
        const m = /^[A-Za-z0-9_/-]+/.exec(s.slice(i))
        if (m === null) bad('expected a field')
        path.push(m![0]); i += m![0].length
      }
      if (s[i] !== '.') break
      i++
    }
    const sel: Selector = { path }
    const op = s.slice(i, i + 2)
    if (op === '==' || op === '!=' || op === '~=') {
      i += 2
      let v: string
      if (s[i] === '"' || s[i] === '/') { [v, i] = readQuoted(s, i) } else {
        const end = s.indexOf(',', i)
        v = s.slice(i, end === -1 ? s.length : end); i += v.length
      }
      sel.op = op; sel.value = v
      if (op === '~=') { try { sel.re = new RegExp(v) } catch { bad('bad regular expression') } }
    }
    const f = path[0]
    if (!(f === 'name' || f === 'parent' || f === 'kind') || path.length !== 1) { if (f !== 'labels' || path.length !== 2) bad(`unknown field ${JSON.stringify(path.join('.'))}`) }
    sels.push(sel)
    if (i < s.length) { if (s[i] !== ',') bad('expected ","'); i++ }
  }
  return sels
}

export function matches (filters: Filter[], t: FilterTarget): boolean {
  if (filters.length === 0) return true
  return filters.some(sels => sels.every(sel => {
    const f = sel.path[0]!
    const v = f === 'labels' ? t.labels[sel.path[1]!] : f === 'kind' ? t.kind : f === 'name' ? t.name : t.parent
    if (sel.op === undefined) return v !== undefined && v !== ''
    if (sel.op === '==') return f === 'kind' ? v?.toLowerCase() === sel.value!.toLowerCase() : v === sel.value
    if (sel.op === '!=') return f === 'kind' ? v?.toLowerCase() !== sel.value!.toLowerCase() : v !== sel.value
    return v !== undefined && sel.re!.test(v)
  }))
}
