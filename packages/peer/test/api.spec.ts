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
    download: async () => { throw new InvalidUrlError('malformed URL "x"') }
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
    r = await app.inject({ method: 'POST', url: `/api/v1/tasks/${ID}/export`, payload: { path: 'relative' } })
    expect(r.statusCode).toBe(400)
    await app.close()
  })

  it('refuses the content and export of an incomplete task with 409', async () => {
    const app = buildServer(fakeDaemon({ complete: false }))
    expect((await app.inject({ url: `/api/v1/tasks/${ID}/content` })).statusCode).toBe(409)
    const r = await app.inject({ method: 'POST', url: `/api/v1/tasks/${ID}/export`, payload: { path: '/tmp/x' } })
    expect(r.statusCode).toBe(409)
    expect(r.json().error.code).toBe('ERR_INCOMPLETE')
    await app.close()
  })
})
