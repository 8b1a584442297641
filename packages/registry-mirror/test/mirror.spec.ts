/**
 * The mirror's own rules, without a network: upstream resolution, hosts.toml, and the requests refused before
 * any upstream or task is involved (the end-to-end behaviour is test/mirror.spec.ts at the root).
 */
import { describe, it, expect } from 'vitest'
import { buildMirror, hostsToml, resolveUpstream } from '../src/index.js'
import type { Logger, TaskReader } from '@guoce/interface'

const silent: Logger = { debug () {}, info () {}, warn () {}, error () {}, child () { return silent } }
/** no request below may reach a task */
const noReader: TaskReader = {
  stat: async () => { throw new Error('no task expected') },
  read: async () => { throw new Error('no task expected') },
  stream: () => { throw new Error('no task expected') }
}

describe('upstream', () => {
  it('asks loopback registries over http, others over https; docker.io is its registry host', () => {
    expect(resolveUpstream('127.0.0.1:5000', {}).base).toBe('http://127.0.0.1:5000')
    expect(resolveUpstream('localhost:5000', {}).base).toBe('http://localhost:5000')
    expect(resolveUpstream('[::1]:5000', {}).base).toBe('http://[::1]:5000')
    expect(resolveUpstream('registry.example.com', {}).base).toBe('https://registry.example.com')
    expect(resolveUpstream('10.0.0.2:5000', { insecure: ['10.0.0.2:5000'] }).base).toBe('http://10.0.0.2:5000')
    expect(resolveUpstream('docker.io', {}).base).toBe('https://registry-1.docker.io')
    expect(resolveUpstream(undefined, { defaultUpstream: 'r.example.com' }).host).toBe('r.example.com')
    expect(() => resolveUpstream(undefined, {})).toThrow(/no upstream/)
    expect(() => resolveUpstream('evil.com/x?y', {})).toThrow(/bad upstream/)
  })

  it('writes the hosts.toml containerd reads', () => {
    const t = hostsToml('registry.example.com', 'http://127.0.0.1:65002')
    expect(t).toContain('server = "https://registry.example.com"')
    expect(t).toContain('[host."http://127.0.0.1:65002"]\n  capabilities = ["pull", "resolve"]')
    expect(() => hostsToml('bad host/x', 'http://127.0.0.1:65002')).toThrow(/--registry/)
    expect(() => hostsToml('r.example.com', 'ftp://x')).toThrow(/mirror/)
  })
})

describe('requests refused before any upstream', () => {
  const { app } = buildMirror({ reader: noReader, log: silent })
  const code = async (url: string, method: 'GET' | 'HEAD' | 'POST' = 'GET'): Promise<[number, string]> => {
    const r = await app.inject({ method, url })
    return [r.statusCode, method === 'HEAD' ? '' : (r.json() as { errors: Array<{ code: string }> }).errors[0]!.code]
  }
  const digest = `sha256:${'a'.repeat(64)}`

  it('answers the ping of a client that names no registry', async () => {
    const r = await app.inject({ method: 'GET', url: '/v2/' })
    expect([r.statusCode, r.headers['docker-distribution-api-version']]).toEqual([200, 'registry/2.0'])
  })

  it('gives each bad request its OCI code', async () => {
    expect(await code(`/v2/demo/app/blobs/${digest}`)).toEqual([404, 'NAME_UNKNOWN'])
    expect(await code(`/v2/Demo/blobs/${digest}?ns=127.0.0.1:1`)).toEqual([400, 'NAME_INVALID'])
    expect(await code(`/v2/demo/-x/blobs/${digest}?ns=127.0.0.1:1`)).toEqual([400, 'NAME_INVALID'])
    expect(await code('/v2/demo/blobs/sha256:abc?ns=127.0.0.1:1')).toEqual([400, 'DIGEST_INVALID'])
    expect(await code('/v2/demo/blobs/%E0%A4%A?ns=127.0.0.1:1')).toEqual([400, 'NAME_INVALID'])
    expect(await code('/v2/demo/manifests/bad:tag:x?ns=127.0.0.1:1')).toEqual([400, 'DIGEST_INVALID'])
    expect(await code('/v2/demo/manifests/-tag?ns=127.0.0.1:1')).toEqual([400, 'MANIFEST_INVALID'])
    expect(await code(`/v2/demo/referrers/nope?ns=127.0.0.1:1`)).toEqual([400, 'DIGEST_INVALID'])
    expect(await code(`/v2/demo/blobs/${digest}?ns=a/b`)).toEqual([400, 'NAME_INVALID'])
    expect(await code('/v2/demo/blobs/uploads/?ns=127.0.0.1:1', 'POST')).toEqual([404, 'UNSUPPORTED'])
    expect(await code('/v2/demo/nothing?ns=127.0.0.1:1')).toEqual([404, 'UNSUPPORTED'])
    expect((await code(`/v2/demo/blobs/sha256:abc?ns=127.0.0.1:1`, 'HEAD'))[0]).toBe(400)
  })
})
