# One image for every Fleetwire Node service; the command picks the service.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.base.json tsconfig.json ./
COPY common/package.json common/
COPY broker/package.json broker/
COPY auth-service/package.json auth-service/
COPY cli/package.json cli/
RUN npm ci --no-audit --no-fund
COPY common common
COPY broker broker
COPY auth-service auth-service
COPY cli cli
RUN npx tsc -b && npm prune --omit=dev

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
