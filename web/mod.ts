export { ConfigError, loadWebConfig, type WebConfig } from "./config.ts";
export { createWebServer, type WebServer, type WebServerOptions } from "./server.ts";
export { hashPassword, verifyPassword } from "./auth.ts";
