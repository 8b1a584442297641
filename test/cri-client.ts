/** The CRI image service as kubelet calls it (gRPC on containerd's socket), from the .proto in fixtures/cri. */
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'

type ImageService = grpc.Client & { PullImage: (req: unknown, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: { imageRef: string }) => void) => void }

/** CRI PullImage of `image` through containerd at `address`; resolves the image id CRI answers. */
export async function criPullImage (address: string, image: string, timeoutMs = 60_000): Promise<string> {
  const def = loadSync('image-service.proto', { includeDirs: [join(import.meta.dirname, 'fixtures', 'cri')], keepCase: false, defaults: true })
  const pkg = grpc.loadPackageDefinition(def) as unknown as { runtime: { v1: { ImageService: new (addr: string, creds: grpc.ChannelCredentials) => ImageService } } }
  const cri = new pkg.runtime.v1.ImageService(`unix:${address}`, grpc.credentials.createInsecure())
  try {
    const res = await new Promise<{ imageRef: string }>((resolve, reject) => {
      cri.PullImage({ image: { image } }, { deadline: Date.now() + timeoutMs }, (err, r) => { if (err != null) reject(err); else resolve(r!) })
    })
    return res.imageRef
  } finally { cri.close() }
}
