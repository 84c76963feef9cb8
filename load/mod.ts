export { CREATE_ORDER_BODY, type GhzRun, type GhzSummary, runGhz } from "./ghz.ts";
export {
  cpuSeconds,
  type ServiceProcess,
  type StackProcesses,
  startServiceProcess,
  startStackProcesses,
} from "./processes.ts";
