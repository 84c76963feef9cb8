/**
 * The orders handlers. CreateOrder reserves stock in the catalog, then charges in payments; when the charge
 * fails it releases the reservation (compensation) and the order is not created. Both calls carry the
 * caller's deadline, trace and load run id.
 */
import { create } from "@bufbuild/protobuf";
import type { CatalogService } from "@tailwatch/proto/catalog/v1";
import {
  type Order,
  OrderLineSchema,
  OrderSchema,
  OrderService,
  OrderStatus,
} from "@tailwatch/proto/orders/v1";
import type { PaymentService } from "@tailwatch/proto/payments/v1";
import {
  bindService,
  type CallContext,
  decodePageToken,
  encodePageToken,
  PackedMessages,
  pageSize,
  requireId,
  requireRange,
  type ServiceBinding,
} from "@tailwatch/kit";
import { Code, type ServiceClient, ServiceError } from "@tailwatch/grpc";
import { type Logger, uuidv7 } from "@tailwatch/runtime";

export interface OrdersOptions {
  /** Orders remembered; the oldest are forgotten first. */
  maxOrders: number;
  /** Longest a call to catalog or payments may take, within the caller's own deadline. */
  upstreamTimeoutMs: number;
}

export interface OrdersDependencies {
  catalog: ServiceClient<typeof CatalogService>;
  payments: ServiceClient<typeof PaymentService>;
  logger: Logger;
}

const MAX_LINES = 50;

export function createOrders(options: OrdersOptions, deps: OrdersDependencies): ServiceBinding {
  const orders = new PackedMessages(OrderSchema, options.maxOrders);
  const upstream = (context: CallContext) => ({
    timeoutMs: options.upstreamTimeoutMs,
    deadlineMs: context.deadlineMs,
    traceparent: context.traceparent,
    loadRunId: context.loadRunId,
    signal: context.signal,
  });
  const find = (orderId: string) => {
    const order = orders.get(requireId("order_id", orderId));
    if (!order) throw new ServiceError(Code.NOT_FOUND, `order ${orderId} not found`);
    return order;
  };
  const release = async (reservationId: string, context: CallContext) => {
    try {
      await deps.catalog.releaseStock({ reservationId }, upstream(context));
    } catch (error) {
      // The reservation stays taken; say so loudly, an operator can release it by hand.
      deps.logger.error("compensation failed: reservation not released", { reservationId, error });
    }
  };

  return bindService(OrderService, {
    async createOrder(request, context) {
      const customerId = requireId("customer_id", request.customerId);
      if (request.lines.length === 0 || request.lines.length > MAX_LINES) {
        throw new ServiceError(Code.INVALID_ARGUMENT, `lines must hold 1 to ${MAX_LINES} items`);
      }
      request.lines.forEach((line, i) => {
        requireId(`lines[${i}].product_id`, line.productId);
        requireRange(`lines[${i}].quantity`, line.quantity, 1, 10_000);
      });
      if (request.cardNumber === "") throw new ServiceError(Code.INVALID_ARGUMENT, "card_number is required");
      const orderId = `ord-${uuidv7()}`;
      const reservation = await deps.catalog.reserveStock({
        orderId,
        lines: request.lines.map((line) => ({ productId: line.productId, quantity: line.quantity })),
      }, upstream(context));
      const currencies = new Set(reservation.lines.map((line) => line.currency));
      if (currencies.size !== 1) {
        await release(reservation.reservationId, context);
        throw new ServiceError(
          Code.FAILED_PRECONDITION,
          "all products of an order must have the same currency",
        );
      }
      const total = reservation.lines.reduce(
        (sum, line) => sum + line.unitPriceCents * BigInt(line.quantity),
        0n,
      );
      const currency = [...currencies][0];
      let paymentId: string;
      try {
        const charged = await deps.payments.charge({
          orderId,
          amountCents: total,
          currency,
          cardNumber: request.cardNumber,
        }, upstream(context));
        paymentId = charged.payment!.paymentId;
      } catch (error) {
        await release(reservation.reservationId, context);
        throw ServiceError.from(error);
      }
      const order = create(OrderSchema, {
        orderId,
        customerId,
        lines: reservation.lines.map((line) =>
          create(OrderLineSchema, {
            productId: line.productId,
            quantity: line.quantity,
            unitPriceCents: line.unitPriceCents,
          })
        ),
        totalCents: total,
        currency,
        status: OrderStatus.CONFIRMED,
        reservationId: reservation.reservationId,
        paymentId,
        createTimeMs: BigInt(Date.now()),
      });
      orders.set(orderId, order, customerId);
      return { order };
    },
    getOrder(request) {
      return { order: find(request.orderId) };
    },
    listOrders(request) {
      const size = pageSize(request.pageSize);
      const after = decodePageToken(request.pageToken);
      if (request.customerId !== "") requireId("customer_id", request.customerId);
      const page: Order[] = [];
      let skipping = after !== undefined;
      let more = false;
      const customer = request.customerId === "" ? undefined : request.customerId;
      for (const [id, order] of orders.newestFirst(customer)) {
        if (skipping) {
          if (id === after) skipping = false;
          continue;
        }
        if (page.length === size) {
          more = true;
          break;
        }
        page.push(order);
      }
      return { orders: page, nextPageToken: more ? encodePageToken(page[page.length - 1].orderId) : "" };
    },
    async cancelOrder(request, context) {
      const order = find(request.orderId);
      if (order.status === OrderStatus.CANCELLED) return { order };
      await deps.payments.refund({ paymentId: order.paymentId }, upstream(context));
      await deps.catalog.releaseStock({ reservationId: order.reservationId }, upstream(context));
      order.status = OrderStatus.CANCELLED;
      orders.set(order.orderId, order, order.customerId);
      return { order };
    },
  });
}
