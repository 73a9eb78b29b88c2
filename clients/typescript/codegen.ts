// graphql-codegen's client preset over the service's schema and the operations it ships:
// `npm run codegen` writes typed documents to src/gql/ (paths are relative to this folder).
import type { CodegenConfig } from '@graphql-codegen/cli';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { type OperationDefinitionNode, parse } from 'graphql';

const OPERATIONS = '../../schema/operations';

// The hash a document is sent by. The server knows each operation it ships by the SHA-256 of its
// file's exact text, comments and layout included (server/persisted.py); the preset's own
// 'sha256' hashes its normalised print of the document, which the server has never seen. A
// document the service does not ship keeps the preset's hash: send that document's printed text
// (persisted-documents.json) with it once, and the hash alone afterwards.
function serverHash(printed: string): string {
  const [operation] = parse(printed).definitions as OperationDefinitionNode[];
  const file = `${OPERATIONS}/${operation.name?.value}.graphql`;
  const text = existsSync(file) ? readFileSync(file, 'utf8') : printed;
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

const config: CodegenConfig = {
  schema: '../../schema.graphql',
  documents: [`${OPERATIONS}/*.graphql`],
  ignoreNoDocuments: false,
  generates: {
    './src/gql/': {
      preset: 'client',
      config: {
        // RFC 3339 text with an offset, as sent and received; parse it where you need a Date.
        scalars: { DateTime: 'string' },
        useTypeImports: true,
      },
      presetConfig: {
        // Each document carries its hash in `__meta__.hash`; src/gql/persisted-documents.json
        // maps every hash to the document's printed text.
        persistedDocuments: { hashAlgorithm: serverHash },
      },
    },
  },
};

export default config;
