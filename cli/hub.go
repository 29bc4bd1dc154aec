package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/server"
)

// hubClient connects to the running hub at url: the same engine, over its API.
func (g *globals) hubClient(url string) (server.Engine, func(), error) {
	token, err := server.ReadToken(g.v.GetString("hub-token-file"), g.secrets.getenv)
	if err != nil {
		return nil, nil, fmt.Errorf("--hub %s: %w", url, err)
	}
	c, err := server.NewClient(server.ClientOptions{URL: url, Token: token, CAFile: g.v.GetString("hub-ca")})
	if err != nil {
		return nil, nil, err
	}
	return c, func() {}, nil
}

func extraCommands(g *globals) []*cobra.Command {
	open := func(ctx context.Context) (*server.Hub, func(), error) {
		// nil progress: the server logs each step as a debug line.
		return g.openHub(ctx, nil, true)
	}
	return []*cobra.Command{newCSRAgentCommand(g), newServerCommand(open, g.v, g.secrets.getenv), newVerifyCommand(g), newHistoryCommand(g), newHubCommand(g)}
}
