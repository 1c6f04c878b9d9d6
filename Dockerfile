# One image for every Fleetwire Node service; the command picks the service.
# Services are the npm workspaces in package.json: adding one needs no edit here.

# Only the package manifests, so the npm ci layer below is rebuilt when one of them
# changes and not on every source edit (COPY --from is cached by content).
FROM node:20-bookworm-slim AS manifests
WORKDIR /app
COPY package.json package-lock.json ./
COPY . /tmp/src
RUN for w in $(node -p "require('./package.json').workspaces.join(' ')"); do \
      mkdir -p "$w" && cp "/tmp/src/$w/package.json" "$w/"; \
    done

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY --from=manifests /app ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npx tsc -b $(node -p "require('./package.json').workspaces.join(' ')") && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app /app
# The auth service keeps its signing keys here (mount a volume); owned by the service user.
RUN mkdir -p /data && chown node:node /data
USER node
EXPOSE 8080
ENTRYPOINT ["node", "cli/dist/main.js"]
CMD ["up"]
