import type { DescMethod } from "@bufbuild/protobuf";

/** The gRPC path of a method: "/catalog.v1.CatalogService/GetProduct". */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}
