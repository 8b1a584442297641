import { describe, it, expect } from 'vitest'
import { InvalidUrlError } from '@guoce/interface'
import { buildServer, type PeerDaemon } from '../src/index.js'

const ID = 'a'.repeat(64)

function fakeDaemon (stored: { complete: boolean } | null): PeerDaemon {
  return {
    tasks: new Map(),
    store: { get: async () => stored },
    peerId: 'peer',
    client: { connected: false },
    stats: { peerBytes: 0, sourceBytes: 0, uploadBytes: 0, tasksStarted: 0, blamedParents: 0, parentConnections: {} },
    download: async (req: { url: string }) => {
      if (req.url === 'x') throw new InvalidUrlError('malformed URL "x"')
      return { taskId: ID, progress: () => ({ taskId: ID, state: 'running' }) }
    }
  } as unknown as PeerDaemon
}

describe('local API errors', () => {
  it('maps errors to statuses with a {name, code, message} body', async () => {
    const app = buildServer(fakeDaemon(null))
    let r = await app.inject({ url: `/api/v1/tasks/${ID}` })
    expect(r.statusCode).toBe(404)
    expect(r.json().error).toMatchObject({ name: 'NotFoundError', code: 'ERR_NOT_FOUND' })
    r = await app.inject({ url: '/api/v1/tasks/nope/content' })
    expect(r.statusCode).toBe(400)
    expect(r.json().error.name).toBe('InvalidParametersError')
    r = await app.inject({ method: 'POST', url: '/api/v1/tasks', payload: { url: 'x' } })
    expect(r.statusCode).toBe(400)
    expect(r.json().error.name).toBe('InvalidUrlError')
    r = await app.inject({ method: 'POST', url: '/api/v1/tasks', payload: { nope: 1 } })
    expect(r.statusCode).toBe(400)
    await app.close()
  })

  it('gives the content only with the access token of POST /api/v1/tasks; an incomplete task is 409', async () => {
    const app = buildServer(fakeDaemon({ complete: false }))
    for (const headers of [{}, { 'x-guoce-access': 'f'.repeat(64) }, { 'x-guoce-access': 'nope' }]) {
      const r = await app.inject({ url: `/api/v1/tasks/${ID}/content`, headers })
      expect(r.statusCode).toBe(403)
      expect(r.json().error.name).toBe('ForbiddenError')
    }
    const posted = await app.inject({ method: 'POST', url: '/api/v1/tasks', payload: { url: 'http://127.0.0.1/f' } })
    const access = posted.json().access as string
    expect(access).toMatch(/^[0-9a-f]{64}$/)
    const r = await app.inject({ url: `/api/v1/tasks/${ID}/content`, headers: { 'x-guoce-access': access } })
    expect(r.statusCode).toBe(409)
    expect((await app.inject({ method: 'DELETE', url: `/api/v1/tasks/${ID}` })).statusCode).toBe(403)
    expect(r.json().error.code).toBe('ERR_INCOMPLETE')
    await app.close()
  })

  it('writes no file at a caller-given path: the export route answers 410 whatever the path', async () => {
    for (const stored of [{ complete: true }, { complete: false }, null]) {
      const app = buildServer(fakeDaemon(stored))
      for (const path of ['/tmp/x', '/etc/passwd', 'relative']) {
        const r = await app.inject({ method: 'POST', url: `/api/v1/tasks/${ID}/export`, payload: { path } })
        expect(r.statusCode).toBe(410)
        expect(r.json().error.name).toBe('ForbiddenError')
      }
      await app.close()
    }
  })

  it('answers only requests whose Host is a loopback name (DNS rebinding)', async () => {
    const app = buildServer(fakeDaemon(null))
    for (const host of ['127.0.0.1:65001', 'localhost', 'localhost:1', '[::1]:65001', '127.0.0.2:80', 'LOCALHOST:9']) {
      expect((await app.inject({ url: '/healthz', headers: { host } })).statusCode, host).toBe(200)
    }
    for (const host of ['evil.example:65001', 'evil.example', '127.0.0.1.nip.io', '10.0.0.1:65001', '0.0.0.0:65001', 'localhost.evil.example', '[::2]:1', 'localhost:99999999']) {
      const r = await app.inject({ url: '/healthz', headers: { host } })
      expect(r.statusCode, host).toBe(403)
      expect(r.json().error).toMatchObject({ name: 'ForbiddenError', code: 'ERR_FORBIDDEN' })
    }
    const r = await app.inject({ method: 'POST', url: '/api/v1/tasks', headers: { host: 'evil.example' }, payload: { url: 'http://127.0.0.1/x' } })
    expect(r.statusCode).toBe(403)
    await app.close()
  })
})
