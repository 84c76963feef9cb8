export {
  createTailwatchInterceptor,
  type TailwatchInterceptor,
  type TailwatchInterceptorOptions,
} from "./interceptor.ts";
