export { createOrders, type OrdersDependencies, type OrdersOptions } from "./orders.ts";
export { ordersSetup } from "./main.ts";
