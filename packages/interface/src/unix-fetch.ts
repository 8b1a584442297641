/**
 * HTTP over a unix socket, answered as a fetch Response: how clients reach a peer daemon whose local API
 * listens on `unix:PATH` (the built-in fetch cannot dial a socket file).
 */
import { request as httpRequest } from 'node:http'
import { Readable } from 'node:stream'
/** The parts of a fetch request unixFetch sends. */
export interface FetchInit { method?: string, headers?: Record<string, string>, body?: string | null, signal?: AbortSignal }

/** HTTP over a unix socket (a daemon's `--api unix:PATH`), answered as a fetch Response (its body streamed). */
export async function unixFetch (socketPath: string, path: string, init: FetchInit = {}): Promise<Response> {
  return await new Promise<Response>((resolve, reject) => {
    const req = httpRequest({ socketPath, path, method: init.method ?? 'GET', headers: { host: 'localhost', ...init.headers }, ...(init.signal != null ? { signal: init.signal } : {}) }, res => {
      const status = res.statusCode ?? 502
      resolve(new Response(status === 204 || status === 304 ? null : Readable.toWeb(res) as ReadableStream<Uint8Array>, { status }))
    })
    req.on('error', err => { reject(Object.assign(new Error(err.message), { cause: err, name: err.name })) })
    req.end(init.body ?? undefined)
  })
}
