export { CREATE_ORDER_BODY, type GhzRun, type GhzSummary, runGhz } from "./ghz.ts";
export {
  cpuSeconds,
  type MachineCpu,
  machineCpu,
  parseMachineCpu,
  type ServiceProcess,
  type StackProcesses,
  startServiceProcess,
  startStackProcesses,
  stealMeter,
} from "./processes.ts";
