/** A real OTLP/HTTP trace receiver on loopback: it keeps every span it is sent. */
import * as Http from "node:http"

export interface ReceivedSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly name: string
  readonly attributes: Array<{ readonly key: string; readonly value: any }>
}

export const startCollector = async () => {
  const spans: Array<ReceivedSpan> = []
  const server = Http.createServer((req, res) => {
    let body = ""
    req.on("data", (d) => (body += d))
    req.on("end", () => {
      if (req.url === "/v1/traces") {
        for (const resource of JSON.parse(body).resourceSpans ?? []) {
          for (const scope of resource.scopeSpans ?? []) spans.push(...scope.spans)
        }
      }
      res.writeHead(200, { "content-type": "application/json" }).end("{}")
    })
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  return {
    spans,
    /** The endpoint for QUICKIM_OTLP_ENDPOINT. */
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    close: () => server.close()
  }
}
