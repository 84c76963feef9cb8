/** Local-only credentials and token for the dev stack; production sets its own through the environment. */
export interface LocalCredentials {
  adminToken: string;
  clickhouseAdminPassword: string;
  clickhouseReaderPassword: string;
}

export const LOCAL: LocalCredentials = {
  adminToken: Deno.env.get("ADMIN_TOKEN") ?? "dev-admin-token",
  clickhouseAdminPassword: Deno.env.get("CLICKHOUSE_ADMIN_PASSWORD") ?? "dev-admin-password",
  clickhouseReaderPassword: Deno.env.get("CLICKHOUSE_READONLY_PASSWORD") ?? "dev-reader-password",
};
