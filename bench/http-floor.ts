/**
 * What HTTP alone costs per request on this runtime (not a test): one POST route that parses a
 * small JSON body and answers a small JSON envelope, served four ways, each in its own process,
 * alternating ROUNDS times; 64 keep-alive clients (bench/http-client.ts) send REQUESTS requests
 * after 3,000 unmeasured ones, and the server's CPU time is read from /proc.
 *
 *   node-raw      node:http, no framework
 *   web-raw       Deno.serve (web Request and Response), no framework
 *   effect-node   Effect's HttpRouter on node:http (NodeHttpServer), as quick-im serves
 *   effect-web    Effect's HttpRouter on Deno.serve (HttpRouter.toWebHandler)
 *
 *   deno run -A bench/http-floor.ts            # ROUNDS=3 REQUESTS=20000
 */
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import { createServer } from "node:http"
import { makeHttpClient } from "./http-client.ts"

const MODES = ["node-raw", "web-raw", "effect-node", "effect-web"] as const
const answer = (content: unknown) => ({ code: 0, data: { MsgID: `m-${String(content)}` } })

const serve = (mode: string, port: number) => {
  const route = HttpRouter.add(
    "POST",
    "/send_msg",
    Effect.gen(function* () {
      const body = (yield* (yield* HttpServerRequest.HttpServerRequest).json) as { content: unknown }
      return HttpServerResponse.jsonUnsafe(answer(body.content))
    })
  )
  switch (mode) {
    case "node-raw":
      return void createServer((req, res) => {
        const chunks: Array<Buffer> = []
        req.on("data", (c: Buffer) => chunks.push(c))
        req.on("end", () => {
          const body = JSON.stringify(answer(JSON.parse(Buffer.concat(chunks).toString()).content))
          res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
          res.end(body)
        })
      }).listen(port, "127.0.0.1")
    case "web-raw":
      return void Deno.serve(
        { port, hostname: "127.0.0.1", onListen: () => {} },
        async (req) => Response.json(answer(((await req.json()) as { content: unknown }).content))
      )
    case "effect-node":
      return NodeRuntime.runMain(Layer.launch(
        HttpRouter.serve(route, { disableLogger: true }).pipe(
          Layer.provide(NodeHttpServer.layer(() => createServer(), { port, host: "127.0.0.1" }))
        )
      ))
    case "effect-web": {
      const { handler } = HttpRouter.toWebHandler(route, { disableLogger: true })
      return void Deno.serve({ port, hostname: "127.0.0.1", onListen: () => {} }, (req) => handler(req))
    }
  }
}

const cpuMs = (pid: number) => {
  const f = Fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")
  return (Number(f[11]) + Number(f[12])) * 10
}

const drive = async (port: number, n: number) => {
  const http = makeHttpClient(`http://127.0.0.1:${port}`)
  let next = 0
  await Promise.all(Array.from({ length: 64 }, async () => {
    while (next < n) {
      const i = next++
      const r = await http.post("/send_msg", { conversation_id: "c", content: i })
      if (r.status !== 200) throw new Error(`status ${r.status}: ${r.body}`)
    }
  }))
}

if (process.env.HTTP_FLOOR_MODE !== undefined) {
  serve(process.env.HTTP_FLOOR_MODE, Number(process.env.HTTP_FLOOR_PORT))
} else {
  const ROUNDS = Number(process.env.ROUNDS ?? 3)
  const REQUESTS = Number(process.env.REQUESTS ?? 20_000)
  const results = new Map<string, Array<{ cpu: number; rate: number }>>()
  let port = 18_700 + (process.pid % 500)
  for (let round = 0; round < ROUNDS; round++) {
    for (const mode of MODES) {
      port++
      const child = spawn(Deno.execPath(), ["run", "-A", new URL(import.meta.url).pathname], {
        env: { ...process.env, HTTP_FLOOR_MODE: mode, HTTP_FLOOR_PORT: String(port) },
        stdio: "ignore"
      })
      for (let i = 0; i < 100; i++) {
        await new Promise((r) => setTimeout(r, 100))
        if (await drive(port, 1).then(() => true, () => false)) break
      }
      await drive(port, 3000)
      const cpu0 = cpuMs(child.pid!)
      const t0 = performance.now()
      await drive(port, REQUESTS)
      const seconds = (performance.now() - t0) / 1000
      const cpu = ((cpuMs(child.pid!) - cpu0) * 1000) / REQUESTS
      child.kill("SIGKILL")
      results.set(mode, [...(results.get(mode) ?? []), { cpu, rate: REQUESTS / seconds }])
      console.log(
        `round ${round + 1} ${mode}: ${cpu.toFixed(1)} µs CPU per request, ${(REQUESTS / seconds).toFixed(0)}/s`
      )
    }
  }
  const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  console.log("\n| server | CPU µs per request, median (range) | requests/s, median |\n|---|---|---|")
  for (const [mode, rs] of results) {
    const cpus = rs.map((r) => r.cpu)
    console.log(
      `| ${mode} | ${median(cpus).toFixed(1)} (${Math.min(...cpus).toFixed(1)}–${Math.max(...cpus).toFixed(1)}) | ${
        median(rs.map((r) => r.rate)).toFixed(0)
      } |`
    )
  }
}
