package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/server"
)

// hubClient connects to the running hub at url: the same engine, over its API.
func (g *globals) hubClient(url string) (server.Engine, func(), error) {
	token := os.Getenv(server.TokenEnv)
	if f := g.v.GetString("hub-token-file"); f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, fmt.Errorf("hub token: %w", err)
		}
		token = strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0])
	}
	if token == "" {
		return nil, nil, fmt.Errorf("--hub %s: no token: give --hub-token-file or $%s", url, server.TokenEnv)
	}
	c, err := server.NewClient(server.ClientOptions{URL: url, Token: token, CAFile: g.v.GetString("hub-ca")})
	if err != nil {
		return nil, nil, err
	}
	return c, func() {}, nil
}

func extraCommands(g *globals) []*cobra.Command {
	open := func(ctx context.Context) (*server.Hub, func(), error) {
		return g.openHub(ctx, io.Discard, true)
	}
	return []*cobra.Command{newCSRAgentCommand(g), newServerCommand(open, g.v)}
}
