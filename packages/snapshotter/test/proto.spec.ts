/**
 * Our .proto files say what containerd's say (Debian's golang-github-containerd-containerd-dev, the source
 * of the containerd we test against): same package, services, methods, messages, field names, numbers,
 * types and labels, same enum values. And src/gen is what the generator makes of them today.
 */
import { readFile, readdir, rm } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join, relative } from 'node:path'
import protobuf from 'protobufjs'
import { describe, expect, it } from 'vitest'
import { PROTO_DIR } from '../src/index.js'
import { run, tempDir } from './helpers.js'

const UPSTREAM = '/usr/share/gocode/src/github.com/containerd/containerd/api'

/** A comparable outline of a parsed .proto: every message, enum and service with its members. */
function outline (text: string): unknown {
  const { root } = protobuf.parse(text, { keepCase: true, alternateCommentMode: true })
  const out: Record<string, unknown> = {}
  const walk = (ns: protobuf.NamespaceBase): void => {
    for (const o of ns.nestedArray) {
      if (o instanceof protobuf.Type) {
        out[o.fullName] = Object.values(o.fields).map(f => ({ name: f.name, id: f.id, type: f.type, repeated: f.repeated, map: f instanceof protobuf.MapField ? f.keyType : '' }))
      } else if (o instanceof protobuf.Enum) {
        out[o.fullName] = o.values
      } else if (o instanceof protobuf.Service) {
        out[o.fullName] = Object.values(o.methods).map(m => ({ name: m.name, req: m.requestType, res: m.responseType, stream: m.responseStream ?? false }))
      }
      if (o instanceof protobuf.Namespace) walk(o)
    }
  }
  walk(root)
  return out
}

describe('protocol definition', () => {
  it('snapshots.proto and mount.proto match containerd\'s field for field', async () => {
    expect(existsSync(UPSTREAM), 'apt-get install golang-github-containerd-containerd-dev (scripts/debian-packages.txt)').toBe(true)
    const pairs: Array<[string, string]> = [
      ['containerd/services/snapshots/v1/snapshots.proto', 'services/snapshots/v1/snapshots.proto'],
      ['containerd/types/mount.proto', 'types/mount.proto']
    ]
    for (const [ours, theirs] of pairs) {
      const a = outline(await readFile(join(PROTO_DIR, ours), 'utf8')) as Record<string, unknown>
      const b = outline(await readFile(join(UPSTREAM, theirs), 'utf8')) as Record<string, unknown>
      expect(Object.keys(a).length).toBeGreaterThan(0)
      expect(a).toEqual(b)
    }
  })

  it('src/gen is what proto-loader-gen-types makes of the .proto files now', async () => {
    const out = await tempDir('gen')
    try {
      const pkg = join(import.meta.dirname, '..')
      const scripts = JSON.parse(await readFile(join(pkg, 'package.json'), 'utf8')).scripts as { gen: string }
      const cmd = scripts.gen.replace(/^rm -rf src\/gen && /, '').replace('--outDir=src/gen', `--outDir=${out}`)
      await run('sh', ['-c', `PATH=${join(pkg, '..', '..', 'node_modules', '.bin')}:$PATH ${cmd}`], { cwd: pkg })
      const list = async (d: string): Promise<string[]> => (await readdir(d, { recursive: true, withFileTypes: true })).filter(e => e.isFile()).map(e => relative(d, join(e.parentPath, e.name))).sort()
      const gen = join(pkg, 'src', 'gen')
      const files = await list(gen)
      expect(await list(out)).toEqual(files)
      for (const f of files) expect(await readFile(join(out, f), 'utf8'), f).toBe(await readFile(join(gen, f), 'utf8'))
    } finally { await rm(out, { recursive: true, force: true }) }
  })
})
