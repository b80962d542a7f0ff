/** Crafted hostile inputs that must be refused: filled in below. */
export interface CraftedCase {
  name: string;
  target: "tensor file" | "checkpoint dir";
  path: string;
  /** What the refusal's message must say. */
  expect: RegExp;
}

export async function craftedCases(_dir: string): Promise<CraftedCase[]> {
  return [];
}
