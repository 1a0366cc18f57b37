/**
 * CPU use of a load run on this machine, read from /proc: the whole machine, the quick-im nodes,
 * the driver itself and one PostgreSQL server (its postmaster and every backend under it). On a
 * shared 2-core machine these tell whether a run measured the server or CPU starvation.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"

const TICK_MS = 10 // USER_HZ is 100 on Linux

const read = (path: string) => {
  try {
    return Fs.readFileSync(path, "utf8")
  } catch {
    return undefined
  }
}

/** utime + stime of a process in ticks, and its parent's pid. */
const processStat = (pid: number) => {
  const stat = read(`/proc/${pid}/stat`)
  if (stat === undefined) return undefined
  // The command name may hold spaces and parentheses: fields count from the last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) }
}

const machineTicks = () => {
  const [, ...values] = read("/proc/stat")!.split("\n")[0].trim().split(/\s+/)
  const n = values.map(Number)
  const idle = n[3] + n[4]
  return { busy: n.reduce((a, b) => a + b, 0) - idle, total: n.reduce((a, b) => a + b, 0) }
}

/** The postmaster listening on `port` (its command line carries `-p port`) and its children. */
const postgresPids = (port: number) => {
  const all = Fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d)).map(Number)
  const postmaster = all.find((pid) => {
    const args = read(`/proc/${pid}/cmdline`)?.split("\0") ?? []
    const p = args.indexOf("-p")
    return p >= 0 && args[p + 1] === String(port) && /postgres$/.test(args[0])
  })
  if (postmaster === undefined) return []
  return [postmaster, ...all.filter((pid) => processStat(pid)?.ppid === postmaster)]
}

export interface CpuSample {
  /** Seconds since the sampler started. */
  readonly at: number
  /** Cores kept busy over the last interval: the machine, the nodes, this driver, PostgreSQL. */
  readonly machine: number
  readonly nodes: number
  readonly driver: number
  readonly postgres: number
  readonly load1: number
}

/**
 * Samples every `intervalMs` until stopped. Processes are counted by what they used between two
 * samples, so a node killed between them loses its last interval (under a second of a run).
 */
export const cpuSampler = (options: {
  readonly nodePids: () => ReadonlyArray<number>
  readonly postgresPort: number
  readonly intervalMs?: number
}) => {
  const intervalMs = options.intervalMs ?? 5000
  const samples: Array<CpuSample> = []
  const started = performance.now()
  const last = new Map<number, number>()
  /** Ticks used since the previous sample by each of `pids` (a process seen first counts from its start). */
  const used = (pids: ReadonlyArray<number>) => {
    let sum = 0
    for (const pid of pids) {
      const now = processStat(pid)?.ticks
      if (now === undefined) continue
      sum += now - (last.get(pid) ?? 0)
      last.set(pid, now)
    }
    return sum
  }
  let machine = machineTicks()
  let at = performance.now()
  used([process.pid, ...options.nodePids(), ...postgresPids(options.postgresPort)])
  const timer = setInterval(() => {
    const now = performance.now()
    const m = machineTicks()
    const seconds = (now - at) / 1000
    const cores = (ticks: number) => (ticks * TICK_MS) / 1000 / seconds
    samples.push({
      at: (now - started) / 1000,
      machine: ((m.busy - machine.busy) / (m.total - machine.total)) * Os.cpus().length,
      nodes: cores(used(options.nodePids())),
      driver: cores(used([process.pid])),
      postgres: cores(used(postgresPids(options.postgresPort))),
      load1: Os.loadavg()[0]
    })
    machine = m
    at = now
  }, intervalMs)
  return {
    samples,
    stop: () => clearInterval(timer)
  }
}

/** Mean and largest sample of one figure. */
export const cpuSummary = (samples: ReadonlyArray<CpuSample>, figure: keyof Omit<CpuSample, "at">) => {
  const values = samples.map((s) => s[figure])
  return {
    mean: values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length,
    max: values.length === 0 ? 0 : Math.max(...values)
  }
}
