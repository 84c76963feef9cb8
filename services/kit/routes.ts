/**
 * REST routes derived from the services' google.api.http options: one route per RPC, so the REST shim has
 * no second, hand-kept list. Path templates support literal segments, `{field}` variables and a `:verb`
 * suffix, e.g. "/v1/reservations/{reservation_id}:release".
 */
import { type DescField, type DescMethod, getOption, hasOption } from "@bufbuild/protobuf";
import { http } from "@tailwatch/proto/google/api";
import type { ServiceBinding } from "./pipeline.ts";

export interface Route {
  binding: ServiceBinding;
  method: DescMethod;
  httpMethod: "GET" | "PUT" | "POST" | "DELETE" | "PATCH";
  /** The template as written, e.g. "/v1/products/{product_id}". */
  template: string;
  /** "GET /v1/products/{product_id}": the route label in events and metrics. */
  label: string;
  /** "*" when the whole request message is the JSON body; "" when there is no body. */
  body: string;
  pattern: RegExp;
  /** Request fields bound to path variables, in order. */
  pathFields: DescField[];
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

export function compileRoutes(bindings: readonly ServiceBinding[]): Route[] {
  const routes: Route[] = [];
  for (const binding of bindings) {
    for (const method of binding.service.methods) {
      if (!hasOption(method, http)) continue;
      const rule = getOption(method, http);
      const pattern = rule.pattern;
      if (pattern.case === undefined) continue;
      const httpMethod = pattern.case.toUpperCase() as Route["httpMethod"];
      const template = pattern.value;
      const pathFields: DescField[] = [];
      let source = "^";
      for (const part of template.split(/(\{[^}]+\})/)) {
        const variable = /^\{([a-z_][a-z0-9_]*)\}$/.exec(part);
        if (variable) {
          const field = method.input.fields.find((f) => f.name === variable[1]);
          if (!field || field.fieldKind !== "scalar") {
            throw new Error(
              `${method.toString()}: path variable {${variable[1]}} is not a scalar field of the request`,
            );
          }
          pathFields.push(field);
          source += "([^/]+?)";
        } else {
          source += escapeRegExp(part);
        }
      }
      if (rule.body !== "" && rule.body !== "*") {
        throw new Error(`${method.toString()}: only body "*" or no body is supported, got ${rule.body}`);
      }
      routes.push({
        binding,
        method,
        httpMethod,
        template,
        label: `${httpMethod} ${template}`,
        body: rule.body,
        pattern: new RegExp(source + "$"),
        pathFields,
      });
    }
  }
  // Literal routes first, so "/v1/orders" never loses to a variable route of the same length.
  routes.sort((a, b) => a.pathFields.length - b.pathFields.length);
  return routes;
}

export type RouteMatch =
  | { kind: "match"; route: Route; params: Map<DescField, string> }
  | { kind: "method-not-allowed"; allowed: string[] }
  | { kind: "none" };

/** Finds the route for a method and path; path variables come back as sent (still percent-encoded). */
export function matchRoute(routes: readonly Route[], httpMethod: string, path: string): RouteMatch {
  const allowed: string[] = [];
  for (const route of routes) {
    const match = route.pattern.exec(path);
    if (!match) continue;
    if (route.httpMethod !== httpMethod) {
      allowed.push(route.httpMethod);
      continue;
    }
    const params = new Map<DescField, string>();
    route.pathFields.forEach((field, i) => params.set(field, match[i + 1]));
    return { kind: "match", route, params };
  }
  return allowed.length ? { kind: "method-not-allowed", allowed } : { kind: "none" };
}
