/** Runs quick-im as a real child process (Deno by default, or a given Node) and waits until it serves. */
import { type ChildProcess, spawn } from "node:child_process"
import * as Path from "node:path"
import { denoV8Flags, V8_FLAGS } from "../../src/RuntimeFlags.ts"
import { freePort } from "./ports.ts"
import { clientFor } from "./server.ts"

export { freePort }

export const root = Path.resolve(import.meta.dirname ?? ".", "../..")
export const denoBin = Path.join(root, "node_modules/.bin/deno")

export interface NodeProcess extends ReturnType<typeof clientFor> {
  readonly url: string
  readonly child: ChildProcess
  readonly output: () => string
  /** Resolves with the exit code, or the signal's name when the process ended by a signal. */
  readonly stop: (signal?: NodeJS.Signals) => Promise<number | string | null>
}

export interface SpawnOptions {
  readonly env: Record<string, string>
  readonly runtime?: "deno" | { readonly node: string; readonly flags?: ReadonlyArray<string> }
  readonly args?: ReadonlyArray<string>
}

/** Starts the server; resolves once /healthz answers, rejects if the process exits first. */
export const spawnServer = async (options: SpawnOptions): Promise<NodeProcess> => {
  const port = await freePort()
  const main = Path.join(root, "src/main.ts")
  const [command, args] = options.runtime === undefined || options.runtime === "deno"
    ? [denoBin, ["run", "-A", denoV8Flags, main, ...(options.args ?? [])]]
    : [options.runtime.node, [...V8_FLAGS, ...(options.runtime.flags ?? []), main, ...(options.args ?? [])]]
  const child = spawn(command, args, {
    cwd: root,
    env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", ...options.env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let output = ""
  child.stdout!.on("data", (d) => (output += d))
  child.stderr!.on("data", (d) => (output += d))
  const exited = new Promise<number | string | null>((resolve) =>
    child.once("exit", (code, signal) => resolve(code ?? signal))
  )
  const url = `http://127.0.0.1:${port}`
  const client = clientFor(url)
  const deadline = Date.now() + 45_000
  for (;;) {
    const state = await Promise.race([
      exited.then((code) => ({ exited: code })),
      client.raw("/healthz", { method: "GET" }).then((r) => ({ status: r.status }), () => ({ status: 0 }))
    ])
    if ("exited" in state) throw new Error(`server exited with ${state.exited} before serving:\n${output}`)
    if (state.status === 200) break
    if (Date.now() > deadline) {
      child.kill("SIGKILL")
      throw new Error(`server did not serve within 45 s:\n${output}`)
    }
    await new Promise((r) => setTimeout(r, 150))
  }
  return {
    url,
    child,
    ...client,
    output: () => output,
    stop: (signal = "SIGTERM") => {
      if (child.exitCode === null) child.kill(signal)
      return exited
    }
  }
}

/** A node's `quickim_memory_bytes{kind="heap_limit"}` (how much its JavaScript heap may take), in MB. */
export const heapLimitMb = async (server: Pick<NodeProcess, "raw">) => {
  const metrics = String((await server.raw("/metrics", { method: "GET" })).body)
  const line = metrics.split("\n").find((l) => l.startsWith("quickim_memory_bytes{") && l.includes(`kind="heap_limit"`))
  return Number(line?.split(" ").at(-1)) / 2 ** 20
}

/** Runs the server expecting it to exit by itself; returns its exit code and output. */
export const runToExit = (options: SpawnOptions, timeoutMs = 45_000) =>
  new Promise<{ code: number | null; output: string }>((resolve) => {
    const child = spawn(denoBin, ["run", "-A", Path.join(root, "src/main.ts"), ...(options.args ?? [])], {
      cwd: root,
      env: { ...process.env, HOST: "127.0.0.1", ...options.env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.on("data", (d) => (output += d))
    child.stderr.on("data", (d) => (output += d))
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs)
    child.once("exit", (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })
