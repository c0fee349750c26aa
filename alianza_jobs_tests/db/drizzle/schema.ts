// A platform database as the Alianza platform's own ORM (Drizzle) would create it, written from the
// names the TypeScript jobs package used (db.query.streamings, emailQueue, userSessions, users) and
// the values it wrote (status "ready" | "error", duration?.toString(), pending/sent/failed email).
// The jobs must run on it without changing it; `make drizzle-schema` regenerates generated/*.sql.
import { relations } from "drizzle-orm"
import {
  index,
  integer,
  pgEnum,
  pgTable,
  text,
  timestamp,
  uuid,
} from "drizzle-orm/pg-core"

const timestamps = {
  createdAt: timestamp("created_at").notNull().defaultNow(),
  updatedAt: timestamp("updated_at").notNull().defaultNow(),
}

export const streamingProvider = pgEnum("streaming_provider", ["cloudflare", "mux", "youtube"])
export const streamingStatus = pgEnum("streaming_status", ["queued", "ready", "error"])
export const emailStatus = pgEnum("email_status", ["pending", "sent", "failed"])

export const users = pgTable("users", {
  id: uuid("id").primaryKey().defaultRandom(),
  email: text("email").notNull().unique(),
  name: text("name"),
  ...timestamps,
  deletedAt: timestamp("deleted_at"),
})

export const userSessions = pgTable(
  "user_sessions",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    userId: uuid("user_id")
      .notNull()
      .references(() => users.id, { onDelete: "cascade" }),
    token: text("token").notNull().unique(),
    expiresAt: timestamp("expires_at").notNull(),
    ...timestamps,
  },
  (table) => [index("user_sessions_expires_at_idx").on(table.expiresAt)],
)

export const streamings = pgTable(
  "streamings",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    userId: uuid("user_id").references(() => users.id),
    title: text("title"),
    provider: streamingProvider("provider").notNull().default("cloudflare"),
    externalId: text("external_id"),
    status: streamingStatus("status").notNull().default("queued"),
    duration: text("duration"),
    ...timestamps,
    deletedAt: timestamp("deleted_at"),
  },
  (table) => [index("streamings_status_provider_idx").on(table.status, table.provider)],
)

export const emailQueue = pgTable(
  "email_queue",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    to: text("to").notNull(),
    from: text("from"),
    subject: text("subject").notNull(),
    html: text("html"),
    text: text("text"),
    status: emailStatus("status").notNull().default("pending"),
    attempts: integer("attempts").notNull().default(0),
    error: text("error"),
    sentAt: timestamp("sent_at"),
    ...timestamps,
  },
  (table) => [index("email_queue_status_idx").on(table.status)],
)

export const usersRelations = relations(users, ({ many }) => ({
  sessions: many(userSessions),
  streamings: many(streamings),
}))
