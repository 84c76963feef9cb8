export { type CatalogOptions, createCatalog } from "./catalog.ts";
export { catalogSetup } from "./main.ts";
