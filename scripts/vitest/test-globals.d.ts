/**
 * For type-checking the tests only (tsconfig.tests.json). Tests read JSON answers and then
 * assert their shape, which is what they test; typing every body first would repeat the
 * route schemas. Declared here, this overload of Response.json() is tried before the
 * library's `Promise<unknown>` one.
 */
interface Response {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json(): Promise<any>;
}
